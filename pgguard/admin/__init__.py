"""The admin HTTP listener: health, the gateway's public keys, and later approvals and metrics."""
