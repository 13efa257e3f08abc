"""bcs-smb: shared folders over SMB 2/3 as bcs locations (copy targets, copies to read)."""
