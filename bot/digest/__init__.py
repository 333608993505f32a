"""The digests and the App Home."""
