"""Goal-completed events leaving the service: the sinks and the publisher's start-up."""
