//! vhost-user-net L3 switch for VM-to-VM networks
