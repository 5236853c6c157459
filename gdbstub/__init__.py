"""gdb remote serial protocol server for xenwb machines."""
