"""Memory: budgets per device, eviction policies, making room, sizes, placement, the host tier."""
