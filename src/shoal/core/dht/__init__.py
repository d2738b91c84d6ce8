"""The pieces of the DHT service (``shoal.core.services.dht``): its frames, its routing
table and the provider records it stores."""
