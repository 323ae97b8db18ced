"""Docker-style random container names (``adjective_scientist``), readable and rarely colliding."""

import os

_LEFT = ("admiring", "brave", "calm", "clever", "dazzling", "eager", "elegant", "focused", "gifted", "happy",
         "jolly", "keen", "loving", "modest", "nifty", "peaceful", "quirky", "relaxed", "serene", "sharp",
         "stoic", "tender", "upbeat", "vibrant", "wizardly", "zealous")
_RIGHT = ("babbage", "curie", "darwin", "einstein", "euler", "fermi", "galois", "hopper", "hypatia", "kepler",
          "lovelace", "meitner", "noether", "pascal", "ritchie", "shannon", "thompson", "turing", "wozniak")


def _choice(seq: tuple) -> str:
    """An unbiased random element, as secrets.choice (importing secrets costs the start path ~2 ms)."""
    limit = 65536 - 65536 % len(seq)
    while True:
        r = int.from_bytes(os.urandom(2), "big")
        if r < limit:
            return seq[r % len(seq)]


def random_name() -> str:
    return f"{_choice(_LEFT)}_{_choice(_RIGHT)}"
