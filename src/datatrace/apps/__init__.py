"""Applications built on attribution scores: the demo and HTML reports."""
