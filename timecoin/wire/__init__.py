"""Wire format: message layouts (messages.py) and length-prefixed framing (framing.py)."""
