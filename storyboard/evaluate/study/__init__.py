"""A user study: invited raters rate every storyboard without knowing which mode made it.

sheets  the storyboards of a study and the blind sheets shown (no mode, score or PNG text can leak)
store   the SQLite file: invited raters (token hashes) and ratings, each committed as it arrives
server  the rating web server (Flask) and its page (templates/rate.html)
stats   per-mode means and shares with 95% intervals, Krippendorff's alpha; the metrics JSON
cli     study-invite, study-serve, study-summarise
"""
