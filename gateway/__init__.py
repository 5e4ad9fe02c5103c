"""gridedge gateway daemon: ingest, verify, store-and-forward, edge checks, cloud uplink."""
