"""meshir frontends: the .mir text format and the Python builder."""
