"""flexforge in continuous integration: GitHub's runner files, the pull-request comment, commit-back."""
