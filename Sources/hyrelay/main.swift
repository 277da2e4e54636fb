print("hyrelay")
