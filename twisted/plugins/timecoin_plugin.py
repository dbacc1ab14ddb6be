"""twistd plugin: `twistd timecoin`.

The tap module is named as a string so plugin discovery never imports the node (or the reactor).
"""
from twisted.application.service import ServiceMaker

timecoin = ServiceMaker(
    "Timecoin node",
    "timecoin.tap",
    "A Timecoin proof-of-stake node with BFT finality (devnet by default).",
    "timecoin",
)
