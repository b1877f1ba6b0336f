"""③ Studies: when a study is complete (a pure policy), the sweeper that applies it, transitions."""
