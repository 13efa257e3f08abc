"""bcs — Backup Copy Shell: PowerShell-style cmdlets that copy backup chains."""

__version__ = "0.1.0"
