//! What uses an image: instances, launch template versions, Auto Scaling groups.
