"""Thin asyncio adapters around the protocol core: WebSocket and REST I/O only."""
