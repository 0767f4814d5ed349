//! Every NATS subject, stream, consumer and bucket name daisy-rs uses.
//! No name is written by hand anywhere else.
