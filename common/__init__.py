"""What both parties share and nothing else: schema, encoding, wire codec, losses, metrics, TLS."""
