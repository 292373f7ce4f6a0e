"""Account export and deletion: the one app that reads every other one's rows."""
