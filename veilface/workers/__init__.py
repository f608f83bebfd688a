"""Worker processes: what every worker does at start (:mod:`.runtime`) and the task modules."""
