# Runs on every start, before main.py. Deliberately empty of our code: nothing here can fail,
# so a bad config or a broken update never locks anyone out of the REPL.
