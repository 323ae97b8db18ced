"""The engine: container semantics, natively and inside the VM guest (standard library only)."""

# The engine's state root: natively on a Linux host, and in the VM guest, where it is the data disk's mount
# point (vmimage/init) and where the host ships the agent's code (runner.vm.ship).
DEFAULT_ROOT = "/var/lib/runner"
