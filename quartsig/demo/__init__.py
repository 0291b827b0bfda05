"""The simulated market that ``quartsig serve --demo`` serves (the stand-in scanner)."""

from quartsig.standin import serve_standin

__all__ = ["serve_standin"]
