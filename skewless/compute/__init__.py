"""Where features are computed: row transformations and point-in-time joins."""
