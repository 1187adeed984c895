"""pitstop.daemon: the node agent (sources, policy, health state, actions, publishing)."""
