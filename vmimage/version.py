"""The guest image's contract version, owned by the recipe; the host (runner.vm.image) reads it from here.

Bump when the guest contract (init, config.json keys, layout, package set) changes: it names the cache dir
and the release asset, so hosts never mix artifacts of two contracts.
"""

IMAGE_VERSION = "2"
