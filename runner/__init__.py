"""runner: a container runner with one CLI for Linux (native) and macOS/Windows (through a QEMU VM)."""

__version__ = "0.1.0"
