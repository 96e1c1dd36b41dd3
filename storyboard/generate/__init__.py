"""The generate stage: every planned story rendered in one mode (outputs/<mode>/<story>/)."""
