"""Edge forwarder: the on-prem unit that receives, de-identifies, uploads and delivers studies."""
