enum _PlaceholderRelayIO {}
