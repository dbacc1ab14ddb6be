"""Push notifications (docs/notifications.md): a hub of subscriptions fed by committed blocks, the ``/ws``
WebSocket endpoint on the RPC port, and ``blocknotify``."""
