"""Binance spot endpoints (venue docs), by mode: ``live`` = production, ``paper`` = the spot
test network. The venue record picks one pair per account; the broker and the live feed
default to the production ones. ``base_url`` / ``stream_url`` override them (local stubs
in tests)."""

from __future__ import annotations

LIVE_API = "https://api.binance.com/api"
LIVE_WS_API = "wss://ws-api.binance.com:443/ws-api/v3"
TESTNET_API = "https://testnet.binance.vision/api"
TESTNET_WS_API = "wss://ws-api.testnet.binance.vision/ws-api/v3"
