"""Where entries live: `memory` (one process, bounded by bytes) or `redis` (shared by the fleet)."""
