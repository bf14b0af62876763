"""pgguard-replay: reading, playing back and verifying pgguard's session logs."""
