"""Where features are served: the online read path (in-process) and the HTTP feature server."""
