"""Protocol services that plug into the endpoint: messages, introductions, relaying, NAT."""
