"""Services: the use cases. They take explicit dependencies and never import strawberry."""
