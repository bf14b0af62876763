"""Who is asking: tokens in, an Identity out, and the roles it maps to."""
