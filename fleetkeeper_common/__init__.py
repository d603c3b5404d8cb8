"""Code both halves share (the reconciler and the agent), with no server dependencies.

An edge node installs the agent without the reconciler; this package is what the agent may
import from outside ``agent/``: the standard library, plus ``cryptography`` for the
signatures of desired state (``signing``).
"""
