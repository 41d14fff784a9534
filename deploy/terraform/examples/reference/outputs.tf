output "kustomize_values" {
  description = "Per satellite: the values that its kustomize overlay sets."
  value = {
    satellite1 = {
      role_arn             = module.satellite1.dualfs_role_arn
      local_volume_handle  = module.satellite1.local_volume_handle
      remote_volume_handle = module.satellite1.remote_volume_handle
    }
    satellite2 = {
      role_arn             = module.satellite2.dualfs_role_arn
      local_volume_handle  = module.satellite2.local_volume_handle
      remote_volume_handle = module.satellite2.remote_volume_handle
    }
  }
}
