variable "region" {
  description = "Region of all three accounts."
  type        = string
  default     = "ap-southeast-1"
}

variable "accounts" {
  description = "Account id of the central account and of each satellite."
  type = object({
    central    = string
    satellite1 = string
    satellite2 = string
  })
  default = {
    central    = "111111111111"
    satellite1 = "222222222222"
    satellite2 = "333333333333"
  }
}

variable "deploy_role_name" {
  description = "Role that Terraform assumes in each account to create the resources."
  type        = string
  default     = "terraform-deploy"
}

variable "vpc_cidrs" {
  description = "VPC CIDR of each account."
  type        = map(string)
  default = {
    central    = "10.0.0.0/16"
    satellite1 = "10.1.0.0/16"
    satellite2 = "10.2.0.0/16"
  }
}

variable "central_efs_subnets" {
  description = "Central EFS subnets, keyed by Availability Zone, with the fixed address of the mount target in each."
  type = map(object({
    cidr       = string
    ip_address = string
  }))
  default = {
    "ap-southeast-1a" = { cidr = "10.0.31.0/24", ip_address = "10.0.31.10" }
    "ap-southeast-1b" = { cidr = "10.0.32.0/24", ip_address = "10.0.32.10" }
    "ap-southeast-1c" = { cidr = "10.0.33.0/24", ip_address = "10.0.33.10" }
  }
}

variable "satellites" {
  description = "Per satellite: the EKS cluster name, the node (private) subnets and the EFS subnets, keyed by Availability Zone."
  type = map(object({
    cluster_name    = string
    private_subnets = map(string)
    efs_subnets     = map(string)
  }))
  default = {
    satellite1 = {
      cluster_name    = "satellite1"
      private_subnets = { "ap-southeast-1a" = "10.1.11.0/24", "ap-southeast-1b" = "10.1.12.0/24" }
      efs_subnets     = { "ap-southeast-1a" = "10.1.31.0/24", "ap-southeast-1b" = "10.1.32.0/24" }
    }
    satellite2 = {
      cluster_name    = "satellite2"
      private_subnets = { "ap-southeast-1a" = "10.2.11.0/24", "ap-southeast-1b" = "10.2.12.0/24" }
      efs_subnets     = { "ap-southeast-1a" = "10.2.31.0/24", "ap-southeast-1b" = "10.2.32.0/24" }
    }
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default = {
    application = "dualfs"
  }
}
