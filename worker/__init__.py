"""The worker side of hotdog: running one training job in a process of its own."""
