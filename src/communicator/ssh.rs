//! SSH communicator (russh + SFTP): one connection per builder.
