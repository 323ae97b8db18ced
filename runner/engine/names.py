"""Docker-style random container names (``adjective_scientist``), readable and rarely colliding."""

import secrets

_LEFT = ("admiring", "brave", "calm", "clever", "dazzling", "eager", "elegant", "focused", "gifted", "happy",
         "jolly", "keen", "loving", "modest", "nifty", "peaceful", "quirky", "relaxed", "serene", "sharp",
         "stoic", "tender", "upbeat", "vibrant", "wizardly", "zealous")
_RIGHT = ("babbage", "curie", "darwin", "einstein", "euler", "fermi", "galois", "hopper", "hypatia", "kepler",
          "lovelace", "meitner", "noether", "pascal", "ritchie", "shannon", "thompson", "turing", "wozniak")


def random_name() -> str:
    return f"{secrets.choice(_LEFT)}_{secrets.choice(_RIGHT)}"
