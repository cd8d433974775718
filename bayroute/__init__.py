"""bayroute: classify arriving delivery vehicles and route drivers to their loading bay."""
