"""The VM backend host side: QEMU, QMP, SSH, machine state, guest artifacts."""
