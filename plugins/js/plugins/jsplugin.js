'use strict'
// jsplugin: the JavaScript dummy plugin of Kong #8531, loaded by kong-js-pluginserver from this
// directory. In the access phase it sets the upstream request header `x-jsplugin` to this
// server's pid, so a response from reflection shows which plugin-server generation handled it.

class KongPlugin {
  constructor (config) {
    this.config = config
  }

  async access (kong) {
    await kong.service.request.setHeader('x-jsplugin', String(process.pid))
  }
}

module.exports = {
  Plugin: KongPlugin,
  Name: 'jsplugin',
  Schema: [{ message: { type: 'string' } }],
  Version: '0.1.0',
  Priority: 0
}
