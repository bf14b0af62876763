"""What `pgguard demo` and the tests set up for themselves: PostgreSQL, certificates, data."""
