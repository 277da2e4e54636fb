enum _PlaceholderRelayServer {}
