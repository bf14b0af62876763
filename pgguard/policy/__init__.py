"""Statement policy: what each statement does, and whether the caller's roles allow it."""
